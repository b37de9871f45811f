"""The transformers EnCodec reference of the parity tests (tests/codec/test_convert*.py): the
default 24 kHz config with random weights and codebooks that make codes well decided, and a
speech-like test signal (the codec bench's)."""

from nclm.bench.codec import speech_like  # noqa: F401 (the parity tests' input, as the bench's)
from tests.conftest import optional

torch, transformers = optional("torch"), optional("transformers")


def random_encodec():
    """transformers' EnCodec 24 kHz (32 levels) with random weights, in eval mode."""
    torch.manual_seed(0)
    model = transformers.EncodecModel(transformers.EncodecConfig()).eval()
    with torch.no_grad():
        # transformers initialises codebooks to zeros. Level 1 gets real latent frames (of other
        # audio) so its choice varies over time; deeper levels get noise at the residual's scale.
        # Random weights put every latent frame near one offset (|z|^2 ~ 0.1, while frames
        # differ by ~1e-3 per channel), so the expanded |z|^2 - 2 z.e + |e|^2 that both sides
        # compute in float32 cancels ~2000-fold, and 1024 picks of 300 frames repeat codewords:
        # level 1 then held ties decided by rounding (a 999-sample clip's last frame: squared
        # distances 9.786e-5 vs 9.792e-5, computed with ~1e-7 error, flipped under jit). The head
        # bias removes the offset and each codeword gets its own jitter, so codes are decided by
        # the encoders' outputs, not by the float32 rounding of the distances.
        latents = model.encoder(torch.from_numpy(speech_like(4, 24000, 99))[:, None])
        frames = latents.permute(0, 2, 1).reshape(-1, latents.shape[1])
        spread = float(frames.std(dim=0).mean())
        center = frames.mean(dim=0)
        model.encoder.layers[-1].conv.bias.sub_(center)
        frames = frames - center
        for q, layer in enumerate(model.quantizer.layers):
            if q == 0:
                pick = torch.randint(0, len(frames), (layer.codebook.embed.shape[0],))
                jitter = torch.randn(len(pick), frames.shape[1]) * (0.25 * spread)
                layer.codebook.embed.copy_(frames[pick] + jitter)
            else:
                layer.codebook.embed.normal_(0.0, spread / q)
    return model
