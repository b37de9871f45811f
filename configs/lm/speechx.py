"""SpeechX: the quickstart LM fine-tuned on TTS plus noise suppression (ns), speech removal (sr),
target speaker extraction (tse), clean (cse) and noisy (nse) speech editing, all on the one
parameter tree, every task under the AR, NAR and masked objectives in the same step.

    nclm simulate --config configs/lm/speechx.py --codec runs/quickstart/codec_run/codec \
        --manifest runs/quickstart/corpus/train.jsonl \
        --symbols runs/quickstart/tokens/train/symbols.json \
        --out runs/quickstart/tokens/speechx_train --num-examples 2000
    nclm simulate ... --manifest runs/quickstart/corpus/valid.jsonl --out .../speechx_valid \
        --num-examples 120 --config.seed=1
    nclm train --config configs/lm/speechx.py --workdir runs/quickstart/speechx_run \
        --config.init_from=runs/quickstart/lm_run/lm \
        --config.data.train=runs/quickstart/tokens/speechx_train \
        --config.data.valid=runs/quickstart/tokens/speechx_valid

`simulation` is what `nclm simulate` draws (nclm.tasks.simulate): task weights (equal by
default: TTS stays in the mix, so fine-tuning does not forget it), the SNR range (U(-5, 20) dB,
not UniAudio's [-20, 40]: the module docstring says why), the interfering speaker's level, the
noise kinds (recorded ones with `nclm simulate --noise`) and the transcript rate of NS/SR/TSE
(SpeechX's 0.5). Validation reports loss and accuracy per task
(eval/<task>/ar|nar|masked/top1). The paper's two-stage schedule is not reproduced: its details
are not verified in REFERENCE.md; init_from (with fresh task-token rows) and a short warmup
stand in for it. `speechx.py:steps=N` sets the steps.
`nclm simulate` draws examples that fit the largest buckets below (simulation.max_prefix and
max_frames default to them; nclm.tasks.simulate says how), so training skips none.
"""

from nclm.lm import config as lm_configs
from nclm.lm.experiment import lm_experiment
from nclm.tasks.simulate import TASK_NAMES


def get_config(arg=None):
    steps = 250
    if arg:
        key, _, value = arg.partition("=")
        if key != "steps" or not value.isdigit():
            raise ValueError(f"configs/lm/speechx.py: arg must be steps=N, got {arg!r}")
        steps = int(value)
    # the quickstart LM's shape (configs/lm/quickstart.py), so init_from can load it
    lm = lm_configs.tiny(8, 256, text_vocab_size=0, num_layers=3, width=128, ffn=512, dropout=0.1)
    cfg = lm_experiment(lm, tiny=True)
    cfg.objective.masked_weight = 1.0
    cfg.optim.lr = 2e-3
    cfg.train.steps = steps
    cfg.train.log_every = 25
    cfg.train.eval_every = 125
    cfg.train.checkpoint_every = 125
    cfg.simulation = dict(
        weights={t: 1.0 for t in TASK_NAMES},
        snr_db=(-5.0, 20.0),
        sir_db=(-3.0, 6.0),
        noise_kinds=("white", "pink", "brown", "tone", "modulated", "babble"),
        noise_manifest="",  # `nclm simulate --noise M.jsonl` sets it and adds "recorded"
        text_prob=0.5,
        enrol_seconds=(1.0, 3.0),
        edit_drop=0.125,
        babble_talkers=3,
    )
    cfg.data.text_buckets = (96, 320)  # the prefix: text and up to ~3 utterances of frames
    cfg.data.frame_buckets = (160, 400)
    cfg.data.max_tokens = 4096
    cfg.optim.warmup_steps = 20
    return cfg
