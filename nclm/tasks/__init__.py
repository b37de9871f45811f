"""The application layer, above `lm` (the model and its layouts) and `decode` (the decoders): what a
user asks for. Zero-shot TTS today (`tts`, `nclm tts`); the SpeechX tasks join it here."""
