//! Steering against Hugging Face transformers (scripts/make-steering-reference.py): CAA vectors
//! equal the mean differences of HF hidden states, generation steered through `Steering` equals
//! HF generation with a forward pre-hook adding the same vector, and ActAdd's position-by-position
//! difference added at the prompt's first positions equals HF's. Then the `.npy` round trip, the
//! CLI, the coefficient sweep and the bad input.

mod common;

use candlelens::prelude::*;
use candlelens::steering::{steering_sweep, target_probability};
use candlelens::tokens::Padding;
use common::*;

fn rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(u32s).collect()
}

fn opts() -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 8,
        stop_at_eos: false,
        ..Default::default()
    }
}

#[test]
fn steering_equals_hugging_face() {
    let fx = read_fixture("reference/steering.json");
    let layer = fx["layer"].as_u64().unwrap();
    let hook = format!("blocks.{layer}.hook_resid_pre");
    let families = fx["families"].as_object().unwrap();
    assert_eq!(families.len(), 3);
    for (family, r) in families {
        let m = tiny(family);
        let pad = m.cfg.pad_token_id;
        // the vector, with the two sets padded on either side
        let want = f32s(&r["vector"]);
        for padding in [Padding::Right, Padding::Left] {
            let pos = Tokens::with_padding(rows(&fx["positive"]), pad, padding).unwrap();
            let neg = Tokens::with_padding(rows(&fx["negative"]), pad, padding).unwrap();
            let v = SteeringVector::contrastive(&m, &hook, &pos, &neg).unwrap();
            let got = to_vec(v.vector());
            let d = max_abs(&got, &want);
            let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!(
                d <= 1e-4 * (1.0 + scale),
                "{family} {padding:?}: vector differs by {d}"
            );
            let norm = r["norm"].as_f64().unwrap() as f32;
            assert!((v.norm().unwrap() - norm).abs() < 1e-4 * (1.0 + norm));
        }
        // generation steered with HF's own vector, prompts left-padded as HF pads them
        let v = SteeringVector::new(
            HookPoint::parse(&hook).unwrap(),
            Tensor::new(want.as_slice(), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let prompts = Tokens::with_padding(rows(&fx["prompts"]), pad, Padding::Left).unwrap();
        assert_eq!(
            m.generate_tokens(&prompts, &opts()).unwrap(),
            rows(&r["greedy"]),
            "{family}: greedy"
        );
        let coef = r["coef"].as_f64().unwrap();
        let mut hooks = Steering::new().add(v, coef).hooks(&m.cfg).unwrap();
        let steered = m
            .generate_tokens_with(&prompts, &opts(), &mut hooks)
            .unwrap();
        assert_eq!(steered, rows(&r["steered"]), "{family}: steered");
        // ActAdd where the reference found a coefficient that moves the continuation
        let a = &r["act_add"];
        if a.get("skipped").is_some() {
            continue;
        }
        let v =
            SteeringVector::act_add_tokens(&m, &hook, &u32s(&a["positive"]), &u32s(&a["negative"]))
                .unwrap();
        assert_eq!(v.vector().dims(), [3, m.cfg.d_model]);
        let prompt = m.tokens_from_ids(u32s(&a["prompt"])).unwrap();
        assert_eq!(
            m.generate_tokens(&prompt, &opts()).unwrap()[0],
            u32s(&a["greedy"])
        );
        let mut hooks = Steering::new()
            .add(v, a["coef"].as_f64().unwrap())
            .hooks(&m.cfg)
            .unwrap();
        let got = m
            .generate_tokens_with(&prompt, &opts(), &mut hooks)
            .unwrap();
        assert_eq!(got[0], u32s(&a["new_ids"]), "{family}: ActAdd");
    }
}

#[test]
fn steering_combines_with_other_hooks_and_sweeps_its_coefficient() {
    let m = tiny("llama");
    let hook = "blocks.1.hook_resid_pre";
    let pos = m.tokens_from_ids(vec![3, 5, 9, 17]).unwrap();
    let neg = m.tokens_from_ids(vec![12, 40, 8, 3]).unwrap();
    let v = SteeringVector::contrastive(&m, hook, &pos, &neg).unwrap();
    let prompt = m.tokens_from_ids(vec![4, 22, 19, 60]).unwrap();
    // a steering added to hooks that already zero block 0's MLP: both apply
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.0.hook_mlp_out", |a, _| Ok(Some(a.zeros_like()?)))
        .unwrap();
    Steering::new()
        .add(v.clone(), 3.0)
        .apply(&mut hooks, &m.cfg)
        .unwrap();
    let both = m.run_with_hooks(&prompt, &mut hooks).unwrap();
    assert_eq!(hooks.audit().fired.len(), 2);
    // the same by hand
    let dv = (v.vector() * 3.0).unwrap();
    let mut by_hand = Hooks::new();
    by_hand
        .add("blocks.0.hook_mlp_out", |a, _| Ok(Some(a.zeros_like()?)))
        .unwrap();
    by_hand
        .add(hook, move |a, _| Ok(Some(a.broadcast_add(&dv)?)))
        .unwrap();
    let want = m.run_with_hooks(&prompt, &mut by_hand).unwrap();
    assert!(max_abs(&to_vec(&both), &to_vec(&want)) < 1e-6);
    // the sweep: coefficient 0 is the plain run; the figure draws
    let targets = [7u32, 11];
    let metric = target_probability(&targets);
    let sweep = steering_sweep(&m, &prompt, &v, &[0.0, 2.0, 8.0], &metric, "p(targets)").unwrap();
    let plain = metric(&m.last_logits(&prompt).unwrap()).unwrap();
    assert!((sweep.values[0] - plain).abs() < 1e-7, "{sweep:?}");
    assert!(sweep.values[2] != sweep.values[0]);
    assert!(sweep.figure().to_svg().unwrap().contains("coefficient"));
}

#[test]
fn vectors_round_trip_through_npy_and_bad_ones_are_refused() {
    let m = tiny("llama");
    let dir = std::env::temp_dir().join(format!("candlelens-steer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hook = "blocks.1.hook_resid_pre";
    let pos = m.tokens_from_ids(vec![3, 5, 9]).unwrap();
    let neg = m.tokens_from_ids(vec![7, 3, 11]).unwrap();
    let v = SteeringVector::contrastive(&m, hook, &pos, &neg).unwrap();
    let path = dir.join("v.npy");
    v.save_npy(&path).unwrap();
    let back = SteeringVector::load_npy(&path, hook, &m.cfg).unwrap();
    assert_eq!(to_vec(back.vector()), to_vec(v.vector()));
    // a vector of another width
    let wide = Tensor::zeros(m.cfg.d_model + 1, DType::F32, &Device::Cpu).unwrap();
    wide.write_npy(dir.join("wide.npy")).unwrap();
    let e = SteeringVector::load_npy(dir.join("wide.npy"), hook, &m.cfg).unwrap_err();
    assert!(
        matches!(e, LensError::Mismatch { .. }) && e.to_string().contains("width"),
        "{e}"
    );
    // NaN values
    let mut vals = to_vec(v.vector());
    vals[2] = f32::NAN;
    Tensor::new(vals.as_slice(), &Device::Cpu)
        .unwrap()
        .write_npy(dir.join("nan.npy"))
        .unwrap();
    let e = SteeringVector::load_npy(dir.join("nan.npy"), hook, &m.cfg).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    // a header that lies about its shape: refused before allocating
    let mut bytes = std::fs::read(&path).unwrap();
    let shape = format!("({},)", m.cfg.d_model);
    let at = bytes
        .windows(shape.len())
        .position(|w| w == shape.as_bytes())
        .unwrap();
    let lie = format!("({},)", "9".repeat(shape.len() - 3));
    bytes[at..at + lie.len()].copy_from_slice(lie.as_bytes());
    std::fs::write(dir.join("lie.npy"), &bytes).unwrap();
    let e = SteeringVector::load_npy(dir.join("lie.npy"), hook, &m.cfg).unwrap_err();
    assert!(matches!(e, LensError::CorruptFile { .. }), "{e:?}");
    // empty sets, unequal ActAdd pairs, a non-finite coefficient
    let none = Tokens::new(vec![], 0);
    if let Ok(none) = none {
        assert!(SteeringVector::contrastive(&m, hook, &none, &neg).is_err());
    }
    let e = SteeringVector::act_add_tokens(&m, hook, &[3, 5], &[3]).unwrap_err();
    assert!(e.to_string().contains("pad the shorter"), "{e}");
    let e = Steering::new()
        .add(v, f64::NAN)
        .hooks(&m.cfg)
        .err()
        .expect("a NaN coefficient was taken");
    assert!(matches!(e, LensError::BadParameter { .. }), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lens_steering_vector_and_generate_steer_equal_the_library() {
    let dir = std::env::temp_dir().join(format!("candlelens-steer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let positive = ["I love this, it is wonderful", "What a happy, joyful day"];
    let negative = ["I hate this, it is awful", "What a sad, miserable day"];
    std::fs::write(dir.join("pos.txt"), positive.join("\n")).unwrap();
    std::fs::write(dir.join("neg.txt"), negative.join("\n")).unwrap();
    let lens = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let r = lens(&[
        "steering-vector",
        "--model",
        "smollm2-135m",
        "--layer",
        "6",
        "--positive",
        "pos.txt",
        "--negative",
        "neg.txt",
        "--out",
        "v.npy",
        "--json",
    ]);
    let m = model("smollm2-135m");
    let v = SteeringVector::contrastive_prompts(m, "blocks.6.hook_resid_pre", &positive, &negative)
        .unwrap();
    assert_eq!(
        (r["n_positive"].as_u64(), r["n_negative"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(
        (r["norm"].as_f64().unwrap() as f32 - v.norm().unwrap()).abs() < 1e-4,
        "{r}"
    );
    let from_file =
        SteeringVector::load_npy(dir.join("v.npy"), "blocks.6.hook_resid_pre", &m.cfg).unwrap();
    assert!(max_abs(&to_vec(from_file.vector()), &to_vec(v.vector())) < 1e-6);
    let prompt = "I think that the weather today is";
    let g = lens(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        prompt,
        "--max-new-tokens",
        "6",
        "--steer",
        "6:8:v.npy",
        "--json",
    ]);
    let tokens = m.to_tokens(prompt, None).unwrap();
    let o = GenerateOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let mut hooks = Steering::new().add(v, 8.0).hooks(&m.cfg).unwrap();
    let want = m.generate_tokens_with(&tokens, &o, &mut hooks).unwrap();
    assert_eq!(u32s(&g["prompts"][0]["new_token_ids"]), want[0]);
    let plain = m.generate_tokens(&tokens, &o).unwrap();
    assert_ne!(plain[0], want[0], "a coefficient of 8 changes nothing");
    // a malformed --steer is named with the fix
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args([
            "generate",
            "--model",
            "smollm2-135m",
            "--prompt",
            "x",
            "--steer",
            "6:v.npy",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("LAYER:COEF:FILE.npy"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
