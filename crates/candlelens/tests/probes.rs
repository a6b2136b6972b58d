//! Probes against scikit-learn (scripts/make-probe-reference.py): Python's split and control
//! shuffle, logistic probes (= LogisticRegression(C) on the same features: directions,
//! intercepts, decisions and accuracies), linear probes (= LinearRegression and Ridge(alpha):
//! coefficients and R²), our last-token features = HF hidden states, and `probe_layers` /
//! `regress_layers` end to end.

mod common;

use candlelens::prelude::*;
use candlelens::probes::{
    last_token_features, probe_layers, read_valued, regress_layers, LinearProbe, LogisticProbe,
    ProbeOptions, Split,
};
use common::*;

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn bools(v: &serde_json::Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() == 1)
        .collect()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn features(v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f32>> = v.as_array().unwrap().iter().map(f32s).collect();
    let (n, d) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (n, d), &Device::Cpu).unwrap()
}

fn pick<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i].clone()).collect()
}

fn rows_of(x: &Tensor, idx: &[usize]) -> Tensor {
    let i = Tensor::new(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    x.index_select(&i, 0).unwrap()
}

/// max |a − b| / max |b|.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}

#[test]
fn probes_equal_scikit_learn_on_the_same_features() {
    let fx = read_fixture("reference/probes.json");
    let (seed, f, c) = (
        fx["seed"].as_u64().unwrap(),
        fx["test_fraction"].as_f64().unwrap(),
        fx["C"].as_f64().unwrap(),
    );
    let labels = bools(&fx["labels"]);
    let split = Split::python(labels.len(), f, seed).unwrap();
    assert_eq!(split.train, usizes(&fx["train"]));
    assert_eq!(split.test, usizes(&fx["test"]));
    let (y_train, y_test) = (pick(&labels, &split.train), pick(&labels, &split.test));
    let targets = f64s(&fx["targets"]);
    for l in fx["layers"].as_array().unwrap() {
        let x = features(&l["features"]);
        let (train, test) = (rows_of(&x, &split.train), rows_of(&x, &split.test));
        let p = LogisticProbe::fit(&train, &y_train, c).unwrap();
        let w: Vec<f64> = to_vec(&p.direction).into_iter().map(f64::from).collect();
        let layer = l["layer"].as_u64().unwrap();
        assert!(
            rel(&w, &f64s(&l["coef"])) < 1e-4,
            "layer {layer}: direction"
        );
        let b = l["intercept"].as_f64().unwrap();
        assert!(
            (p.intercept - b).abs() < 1e-4 * (1.0 + b.abs()),
            "layer {layer}: {} vs {b}",
            p.intercept
        );
        assert!(rel(&p.decision(&test).unwrap(), &f64s(&l["decision_test"])) < 1e-4);
        assert_eq!(
            p.accuracy(&train, &y_train).unwrap(),
            l["train_acc"].as_f64().unwrap()
        );
        assert_eq!(
            p.accuracy(&test, &y_test).unwrap(),
            l["test_acc"].as_f64().unwrap()
        );
        let lin = LinearProbe::fit(&train, &pick(&targets, &split.train)).unwrap();
        let lw: Vec<f64> = to_vec(&lin.direction).into_iter().map(f64::from).collect();
        assert!(
            rel(&lw, &f64s(&l["linear_coef"])) < 1e-3,
            "layer {layer}: linear direction"
        );
        let r2 = lin.r2(&test, &pick(&targets, &split.test)).unwrap();
        let want = l["linear_r2_test"].as_f64().unwrap();
        assert!(
            (r2 - want).abs() < 1e-3 * (1.0 + want.abs()),
            "layer {layer}: R² {r2} vs {want}"
        );
        // ridge: scikit-learn's Ridge(alpha) optimum, R² on both sides
        let alpha = fx["alpha"].as_f64().unwrap();
        let (t_train, t_test) = (pick(&targets, &split.train), pick(&targets, &split.test));
        let ridge = LinearProbe::fit_ridge(&train, &t_train, alpha).unwrap();
        let rw: Vec<f64> = to_vec(&ridge.direction)
            .into_iter()
            .map(f64::from)
            .collect();
        assert!(
            rel(&rw, &f64s(&l["ridge_coef"])) < 1e-5,
            "layer {layer}: ridge direction"
        );
        let b = l["ridge_intercept"].as_f64().unwrap();
        assert!((ridge.intercept - b).abs() < 1e-6 * (1.0 + b.abs()));
        for (got, key) in [
            (ridge.r2(&train, &t_train).unwrap(), "ridge_r2_train"),
            (ridge.r2(&test, &t_test).unwrap(), "ridge_r2_test"),
        ] {
            let want = l[key].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "layer {layer}: {key} {got} vs {want}"
            );
        }
        // fewer rows than features: the dual form, still Ridge's unique optimum
        let few = rows_of(&train, &(0..8).collect::<Vec<_>>());
        let dual = LinearProbe::fit_ridge(&few, &t_train[..8], alpha).unwrap();
        assert!(dual.r2(&few, &t_train[..8]).unwrap() > 0.5);
    }
}

#[test]
fn probe_layers_on_the_model_equals_the_reference() {
    let fx = read_fixture("reference/probes.json");
    let m = tiny("llama");
    let rows: Vec<Vec<u32>> = fx["rows"].as_array().unwrap().iter().map(u32s).collect();
    let tokens = Tokens::new(rows, m.cfg.pad_token_id).unwrap();
    // the features themselves: HF's hidden states at the last token
    let points: Vec<HookPoint> = (0..2)
        .map(|l| HookPoint::parse(&format!("blocks.{l}.hook_resid_post")).unwrap())
        .collect();
    let ours = last_token_features(&m, &tokens, &points, 7).unwrap();
    for (l, x) in fx["layers"].as_array().unwrap().iter().zip(&ours) {
        let d = max_abs(&to_vec(x), &to_vec(&features(&l["features"])));
        assert!(d < 1e-4, "features differ by {d}");
    }
    let opts = ProbeOptions {
        test_fraction: fx["test_fraction"].as_f64().unwrap(),
        seed: fx["seed"].as_u64().unwrap(),
        c: fx["C"].as_f64().unwrap(),
        alpha: fx["alpha"].as_f64().unwrap(),
        batch_size: 16,
    };
    let labels = bools(&fx["labels"]);
    let probes = probe_layers(&m, &tokens, &labels, "resid_post", &[0, 1], &opts).unwrap();
    assert_eq!(probes.control_labels, bools(&fx["control_labels"]));
    for (got, want) in probes.layers.iter().zip(fx["layers"].as_array().unwrap()) {
        for (a, b) in [
            (got.train_acc, "train_acc"),
            (got.test_acc, "test_acc"),
            (got.control_train_acc, "control_train_acc"),
            (got.control_test_acc, "control_test_acc"),
        ] {
            // one row may sit on the boundary within the features' 1e-5
            let w = want[b].as_f64().unwrap();
            assert!(
                (a - w).abs() <= 1.0 / 40.0 + 1e-9,
                "layer {}: {b} {a} vs {w}",
                got.layer
            );
        }
    }
    assert!(probes.figure().to_svg().unwrap().contains("control"));
    // ridge probes per layer on the model: scikit-learn's R² on HF's features, and its control
    let targets = f64s(&fx["targets"]);
    let reg = regress_layers(&m, &tokens, &targets, "resid_post", &[0, 1], &opts).unwrap();
    assert_eq!(reg.control_targets, f64s(&fx["control_targets"]));
    for (got, want) in reg.layers.iter().zip(fx["layers"].as_array().unwrap()) {
        for (a, b) in [
            (got.train_r2, "ridge_r2_train"),
            (got.test_r2, "ridge_r2_test"),
            (got.control_train_r2, "ridge_control_r2_train"),
            (got.control_test_r2, "ridge_control_r2_test"),
        ] {
            let w = want[b].as_f64().unwrap();
            assert!((a - w).abs() < 1e-3, "layer {}: {b} {a} vs {w}", got.layer);
        }
    }
    assert!(reg.figure().to_svg().unwrap().contains("R²"));
}

#[test]
fn bad_probe_input_is_refused() {
    let x = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu).unwrap();
    let e = LogisticProbe::fit(&x, &[true, true, true], 1.0).unwrap_err();
    assert!(e.to_string().contains("both labels"), "{e}");
    let e = LogisticProbe::fit(&x, &[true, false], 1.0).unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e:?}");
    let e = LogisticProbe::fit(&x, &[true, false, true], 0.0).unwrap_err();
    assert!(matches!(e, LensError::BadParameter { .. }), "{e:?}");
    let nan = Tensor::new(&[[1f32, f32::NAN], [0., 1.], [1., 1.]], &Device::Cpu).unwrap();
    let e = LogisticProbe::fit(&nan, &[true, false, true], 1.0).unwrap_err();
    assert!(matches!(e, LensError::Numerical { .. }), "{e:?}");
    let e = LinearProbe::fit(&x.narrow(0, 0, 2).unwrap(), &[1.0, 2.0]).unwrap_err();
    assert!(matches!(e, LensError::TooFew { .. }), "{e:?}");
    let e = LinearProbe::fit_ridge(&x, &[1.0, 2.0, 3.0], 0.0).unwrap_err();
    assert!(matches!(e, LensError::BadParameter { .. }), "{e:?}");
    let e = LinearProbe::fit_ridge(&x, &[1.0, f64::NAN, 3.0], 1.0).unwrap_err();
    assert!(e.to_string().contains("target 1"), "{e}");
    let e = LinearProbe::fit_ridge(&x, &[1.0, 2.0], 1.0).unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e:?}");
    // a constant target: R² as scikit-learn's r2_score gives it, never NaN
    let flat = LinearProbe::fit_ridge(&x, &[2.0, 2.0, 2.0], 1.0).unwrap();
    assert_eq!(flat.r2(&x, &[2.0, 2.0, 2.0]).unwrap(), 1.0);
    assert!(Split::python(10, 0.0, 1).is_err());
    assert!(Split::python(10, 0.99, 1).is_err());
    assert!(Split::python(1, 0.5, 1).is_err());
    let m = tiny("llama");
    let t = m.tokens_from_ids(vec![3, 4, 5]).unwrap();
    let e = probe_layers(
        &m,
        &t,
        &[true, false],
        "resid_post",
        &[0],
        &ProbeOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e:?}");
    let t = Tokens::new(vec![vec![3, 4], vec![5, 6], vec![7, 8], vec![9, 10]], 0).unwrap();
    let e = probe_layers(
        &m,
        &t,
        &[true, false, true, false],
        "resid_post",
        &[5],
        &ProbeOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, LensError::LayerOutOfRange { .. }), "{e:?}");
}

#[test]
fn lens_probe_equals_the_library_and_refuses_bad_data() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/probes/capitals_true_false.jsonl");
    let lens = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = lens(&[
        "probe",
        "--model",
        "smollm2-135m",
        "--data",
        data.to_str().unwrap(),
        "--layers",
        "2,12",
        "--seed",
        "3",
        "--l2",
        "0.5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = model("smollm2-135m");
    let rows: Vec<(String, bool)> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["text"].as_str().unwrap().to_string(), v["label"] == 1)
        })
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
    let tokens = m.to_tokens(texts.as_slice(), None).unwrap();
    let opts = ProbeOptions {
        seed: 3,
        c: 0.5,
        ..Default::default()
    };
    let p = probe_layers(m, &tokens, &labels, "resid_post", &[2, 12], &opts).unwrap();
    for (i, l) in p.layers.iter().enumerate() {
        assert_eq!(r["layers"][i]["layer"].as_u64(), Some(l.layer as u64));
        assert_eq!(r["layers"][i]["test_acc"].as_f64(), Some(l.test_acc), "{r}");
        assert_eq!(
            r["control"][i]["test_acc"].as_f64(),
            Some(l.control_test_acc),
            "{r}"
        );
    }
    assert_eq!(
        (r["n_train"].as_u64(), r["n_test"].as_u64()),
        (Some(45), Some(15))
    );
    // a label other than 0/1, an empty file, a bad --layers: typed messages, no panic
    let dir = std::env::temp_dir().join(format!("candlelens-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // --target value: ridge probes, the library's R² to the last digit
    let valued: String = (0..40)
        .map(|i| {
            let n = (i * 37) % 100;
            format!("{{\"text\": \"The basket holds {n} apples\", \"value\": {n}}}\n")
        })
        .collect();
    std::fs::write(dir.join("apples.jsonl"), valued).unwrap();
    let out = lens(&[
        "probe",
        "--model",
        "smollm2-135m",
        "--data",
        dir.join("apples.jsonl").to_str().unwrap(),
        "--target",
        "value",
        "--layers",
        "3",
        "--alpha",
        "10",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (texts, values) = read_valued(dir.join("apples.jsonl")).unwrap();
    let tokens = m.to_tokens(texts, None).unwrap();
    let opts = ProbeOptions {
        alpha: 10.0,
        ..Default::default()
    };
    let p = regress_layers(m, &tokens, &values, "resid_post", &[3], &opts).unwrap();
    assert_eq!(r["target"], "value");
    assert_eq!(
        r["layers"][0]["test_r2"].as_f64(),
        Some(p.layers[0].test_r2),
        "{r}"
    );
    assert_eq!(
        r["control"][0]["train_r2"].as_f64(),
        Some(p.layers[0].control_train_r2)
    );
    assert!(r["layers"][0].get("test_acc").is_none(), "{r}");
    std::fs::write(dir.join("two.jsonl"), "{\"text\": \"a\", \"label\": 2}\n").unwrap();
    std::fs::write(dir.join("empty.jsonl"), "\n").unwrap();
    for (f, extra, says) in [
        (
            dir.join("two.jsonl"),
            &["--layers", "all"][..],
            "not 0 or 1",
        ),
        (
            dir.join("two.jsonl"),
            &["--target", "value"],
            "not a finite number",
        ),
        (dir.join("empty.jsonl"), &["--layers", "all"], "rows in"),
        (data.clone(), &["--layers", "x,1"], "--layers"),
        (data.clone(), &["--alpha", "0"], "--alpha"),
    ] {
        let mut args = vec![
            "probe",
            "--model",
            "smollm2-135m",
            "--data",
            f.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = lens(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says) && !err.contains("panicked"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
