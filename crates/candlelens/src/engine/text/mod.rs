//! Text in: the tokenizer ([`tokenizer::LensTokenizer`], from `tokenizer.json`, GGUF metadata
//! or GPT-2's BPE files) and padded batches of token ids ([`tokens::Tokens`]).

pub mod tokenizer;
pub mod tokens;
