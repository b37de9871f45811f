"""Text -> symbol ids: espeak-ng phonemes (through phonemizer) or graphemes, and the symbol table
that a checkpoint keeps so that tokenisation is reproduced exactly."""
