"""An offline tokenizer for the tiny models: byte-level BPE trained in-process.

Real Wan checkpoints ship a UMT5 sentencepiece tokenizer; the tiny model cannot download it,
so we train a small byte-level BPE on a fixed built-in caption corpus (deterministic) and
wrap it as a `PreTrainedTokenizerFast` with T5's special tokens, so the stock pipeline code
(padding to max_length, attention mask, EOS) runs unchanged. Any text tokenizes: bytes that
were never merged fall back to single-byte tokens.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5 (pad_token_id=0, eos_token_id=1)

_SUBJECTS = "a red circle|a blue square|a green triangle|a yellow star|a white ball|a small cube|two shapes|a cat|a dog|a bird|a car|a person|waves|clouds|a river|a city street|a forest|the camera"
_VERBS = "moves left|moves right|rotates slowly|bounces|changes colour|grows|shrinks|spins|flies across the sky|walks on the beach|drives through the night|flows past rocks|pans over the scene|zooms in"
_PLACES = "on a black background|in a sunny park|at sunset|in the rain|under the stars|in a snowy landscape|in slow motion|in high detail|in cinematic lighting|with soft shadows"


def caption_corpus() -> list[str]:
    subjects, verbs, places = (part.split("|") for part in (_SUBJECTS, _VERBS, _PLACES))
    return [f"{s} {v} {p}." for s in subjects for v in verbs for p in places]


def build_tiny_tokenizer(vocab_size: int = 1024, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(caption_corpus(), trainer=trainer)
    # T5 appends EOS to every sequence; the pipeline relies on add_special_tokens=True doing so.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
