"""The codec GAN training step: `(state, batch, rng) -> (state, metrics)`, jitted once.

One step updates, in this order and from the same batch:
  1. the generator (encoder, quantizer projections, decoder) on
     sum_name weight[name] * loss[name] over {mel, l1, adv, feat, commit, codebook},
     the adversarial terms computed with the discriminator's parameters before its update;
     or, with `losses.balancer`, EnCodec's balancer on the losses that depend on the output audio;
  2. the discriminator on its adversarial loss against the generator's (stop-gradient) output
     (not at all when the adv and feat weights are both 0: reconstruction-only training);
  3. the EMA codebooks (EMA quantizers only) from the batch statistics the quantizer returned.
With `dtype=bfloat16` the codec's encoder/decoder and the discriminators compute in bfloat16;
parameters, optimizer state, quantizer distances and statistics, and every loss stay float32.
A step whose losses or gradients are not finite changes no parameter, moment or codebook and
reports `nonfinite = 1` (the guard), so one bad batch cannot poison a run; the step counter and the
learning-rate schedules still advance together (optim.skip_update).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from nclm.audio.metrics import usage_statistics
from nclm.codec import losses as L
from nclm.codec.config import CodecConfig
from nclm.codec.discriminators import DiscriminatorConfig, Discriminators
from nclm.codec.model import Codec
from nclm.codec.rvq_ema import ema_update
from nclm.train.optim import all_finite, global_norm, keep_if_finite, skip_update

AUDIO_LOSSES = ("mel", "l1", "adv", "feat")  # the losses that depend on the decoded audio


@flax.struct.dataclass
class CodecTrainState:
    step: jax.Array
    params: Any
    codebooks: Any  # EMA codebook statistics ({} for learned codebooks)
    opt_state: Any
    disc_params: Any
    disc_opt_state: Any
    balancer: Any  # EMA of per-loss gradient norms ({} without the balancer)


def codebook_health(codes: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
    """Per level of codes[B, Q, T]: fraction of codes used in the batch and perplexity 2^H."""
    counts = jax.nn.one_hot(codes, codebook_size).sum(axis=(0, 2))  # [Q, V]
    used, entropy = usage_statistics(counts, jnp)
    return {"usage": used, "perplexity": 2.0**entropy}


def init_train_state(
    codec_variables: dict, disc_params: Any, tx_g, tx_d, losses_cfg
) -> CodecTrainState:
    params = codec_variables["params"]
    balancer = (
        {k: jnp.zeros(()) for k in AUDIO_LOSSES if losses_cfg["weights"].get(k, 0)}
        if losses_cfg.get("balancer")
        else {}
    )
    return CodecTrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        codebooks=codec_variables.get("codebooks", {}),
        opt_state=tx_g.init(params),
        disc_params=disc_params,
        disc_opt_state=tx_d.init(disc_params),
        balancer=balancer,
    )


def _adv_terms(disc_apply, disc_params, wav, x_hat, losses_cfg):
    real = disc_apply({"params": disc_params}, wav)
    fake = disc_apply({"params": disc_params}, x_hat)
    adv = L.adversarial_generator_loss([logits for logits, _ in fake], losses_cfg["gan"])
    feat = L.feature_matching_loss(
        [f for _, f in real],
        [f for _, f in fake],
        relative=losses_cfg["relative_feature_matching"],
        include_last=False,
    )  # hidden maps only, as DAC and EnCodec
    return adv, feat


def make_codec_train_step(
    codec_cfg: CodecConfig,
    disc_cfg: DiscriminatorConfig,
    losses_cfg: dict,
    tx_g: optax.GradientTransformation,
    tx_d: optax.GradientTransformation,
    dtype: Any = jnp.float32,
) -> Callable:
    codec, disc = Codec(codec_cfg, dtype), Discriminators(disc_cfg, dtype)
    weights = {k: float(v) for k, v in losses_cfg["weights"].items()}
    unknown = set(weights) - set(AUDIO_LOSSES) - {"commit", "codebook"}
    if unknown:
        raise ValueError(
            f"losses.weights: unknown loss names {sorted(unknown)}; expected "
            f"{sorted((*AUDIO_LOSSES, 'commit', 'codebook'))}"
        )
    sr = codec_cfg.sample_rate
    adv_start = int(losses_cfg.get("adversarial_start_step", 0))
    # Reconstruction-only training (adv and feat weights 0) never runs the discriminator: its
    # forward and backward passes are most of the GAN step's program (compile time and FLOPs).
    adversarial = bool(weights.get("adv") or weights.get("feat"))

    def audio_losses(x_hat, wav, disc_params, adv_on):
        out = {"mel": L.multi_scale_mel_loss(wav, x_hat, sr), "l1": L.waveform_l1(wav, x_hat)}
        if adversarial:
            adv, feat = _adv_terms(disc.apply, disc_params, wav, x_hat, losses_cfg)
            out["adv"], out["feat"] = adv * adv_on, feat * adv_on
        return out

    def discriminator_update(state: CodecTrainState, wav, fake, adv_on):
        def disc_loss(dp):
            real_logits = [lg for lg, _ in disc.apply({"params": dp}, wav)]
            fake_logits = [lg for lg, _ in disc.apply({"params": dp}, fake)]
            return L.adversarial_discriminator_loss(real_logits, fake_logits, losses_cfg["gan"])

        d_loss, d_grads = jax.value_and_grad(disc_loss)(state.disc_params)
        d_grads = jax.tree_util.tree_map(lambda g: g * adv_on, d_grads)
        d_updates, disc_opt_state = tx_d.update(d_grads, state.disc_opt_state, state.disc_params)
        return d_loss, d_grads, optax.apply_updates(state.disc_params, d_updates), disc_opt_state

    def step(state: CodecTrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        k_drop, k_books = jax.random.split(rng)
        wav, mask = batch["wav"], batch["mask"]
        adv_on = (state.step >= adv_start).astype(jnp.float32)

        def generate(params):
            out = codec.apply(
                {"params": params, "codebooks": state.codebooks},
                wav,
                train=True,
                rngs={"dropout": k_drop, "codebooks": k_books},
            )
            q = out.quantizer
            return (out.wav * mask, (q.commitment_loss, q.codebook_loss)), out

        if losses_cfg.get("balancer"):
            (x_hat, q_losses), pullback, out = jax.vjp(generate, state.params, has_aux=True)
            fns = {
                k: (lambda y, k=k: audio_losses(y, wav, state.disc_params, adv_on)[k])
                for k in state.balancer
            }
            cotangent, balancer, bal_metrics = L.balanced_backward(
                fns, x_hat, {k: weights[k] for k in state.balancer}, state.balancer
            )
            q_cot = (
                jnp.asarray(weights.get("commit", 0.0)),
                jnp.asarray(weights.get("codebook", 0.0)),
            )
            (grads,) = pullback((cotangent, q_cot))
            losses = audio_losses(x_hat, wav, state.disc_params, adv_on)
            total = sum(weights.get(k, 0.0) * v for k, v in losses.items())
        else:

            def loss_fn(params):
                (x_hat, q_losses), out = generate(params)
                losses = audio_losses(x_hat, wav, state.disc_params, adv_on)
                total = sum(weights.get(k, 0.0) * v for k, v in losses.items())
                total = total + weights.get("commit", 0.0) * q_losses[0]
                total = total + weights.get("codebook", 0.0) * q_losses[1]
                return total, (x_hat, q_losses, out, losses)

            (total, (x_hat, q_losses, out, losses)), grads = jax.value_and_grad(
                loss_fn, has_aux=True
            )(state.params)
            balancer, bal_metrics = state.balancer, {}
        losses = {**losses, "commit": q_losses[0], "codebook": q_losses[1]}
        updates, opt_state = tx_g.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        if adversarial:
            d_loss, d_grads, disc_params, disc_opt_state = discriminator_update(
                state, wav, jax.lax.stop_gradient(x_hat), adv_on
            )
        else:  # nothing reads the discriminator: leave it out of the program
            d_loss, d_grads = jnp.zeros(()), {}
            disc_params, disc_opt_state = state.disc_params, skip_update(state.disc_opt_state)

        codebooks, book_metrics = state.codebooks, {}
        if codec_cfg.quantizer.kind == "ema":
            new_books, book_metrics = ema_update(
                state.codebooks["quantizer"], out.quantizer.stats, codec_cfg.quantizer
            )
            codebooks = {"quantizer": new_books}

        finite = all_finite(grads, d_grads, total, d_loss)
        new_state = CodecTrainState(
            state.step + 1, params, codebooks, opt_state, disc_params, disc_opt_state, balancer
        )
        skipped = state.replace(
            step=state.step + 1,
            opt_state=skip_update(state.opt_state),
            disc_opt_state=skip_update(state.disc_opt_state),
        )
        new_state = keep_if_finite(finite, new_state, skipped)
        health = codebook_health(out.quantizer.codes, codec_cfg.codebook_size)
        metrics = {
            **{f"loss/{k}": v for k, v in losses.items()},
            "loss/total": total,
            "loss/disc": d_loss,
            "grad_norm/generator": global_norm(grads),
            "grad_norm/discriminator": global_norm(d_grads),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            "levels_used": jnp.mean(out.quantizer.levels_used.astype(jnp.float32)),
            **{f"codebook/usage_{q}": u for q, u in enumerate(health["usage"])},
            **{f"codebook/perplexity_{q}": p for q, p in enumerate(health["perplexity"])},
            **{
                f"codebook/restarts_{q}": r
                for q, r in enumerate(book_metrics.get("dead_code_restarts", []))
            },
            **{f"balancer/{k}": v for k, v in bal_metrics.items()},
        }
        return new_state, metrics

    return step


def make_codec_eval_step(codec_cfg: CodecConfig) -> Callable:
    """Reconstruction metrics on a batch, no training-mode randomness: (state, batch) -> metrics."""
    codec = Codec(codec_cfg)

    def eval_step(state: CodecTrainState, batch: dict):
        wav, mask = batch["wav"], batch["mask"]
        out = codec.apply({"params": state.params, "codebooks": state.codebooks}, wav)
        x_hat = out.wav * mask
        health = codebook_health(out.quantizer.codes, codec_cfg.codebook_size)
        return {
            "mel": L.multi_scale_mel_loss(wav, x_hat, codec_cfg.sample_rate),
            "l1": L.waveform_l1(wav, x_hat),
            "commit": out.quantizer.commitment_loss,
            **{f"usage_{q}": u for q, u in enumerate(health["usage"])},
        }, x_hat

    return eval_step
