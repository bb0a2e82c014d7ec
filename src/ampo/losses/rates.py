"""Each loss's default learning rate, for a full fine-tune and for LoRA, and where it comes from.

`ampo.config.loading` uses it when nothing (recipe, YAML, flag, override) sets
`train.learning_rate`; docs/losses.md prints the same table.

- **Full fine-tune:** the rate the loss's own paper or official code trained with, or, where the
  authors published none, the rate of the published loss it is closest to, named as such. Where
  only a LoRA rate is published, a tenth of it: the LoRA / full fine-tune ratio of about 10 that
  TRL's PEFT guide and Thinking Machines' "LoRA Without Regret" (Schulman et al. 2025) give.
- **LoRA:** the rate the tuned IFEval study chose (issue 27, results/alignment_ifeval_tuned/tuning.md:
  SmolLM2-135M-Instruct, LoRA r=16, one round of 16 steps of 4 prompts, the `ifeval` reward, best
  held-out reward over 3e-6..3e-4) for the arm that trains the loss on its paper's grouping; the
  losses it did not train take the rate of the studied loss nearest in form (PLAN.md, "defaults
  from evidence"). No chosen rate's held-out interval excludes the initial policy's score: these
  are the best evidence ampo has, not proof that a rate helps; larger models and longer runs want
  smaller rates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    value: float
    source: str


_NCA = ("a tenth of InfoNCA/NCA's official QLoRA rate, 5e-6 (Chen et al. 2024, arXiv 2402.05369; "
        "thu-ml/Noise-Contrastive-Alignment yamls)")
_SIMPO = "SimPO's (Meng et al. 2024, arXiv 2405.14734: official configs 3e-7 to 1e-6 per model, 5e-7 for Mistral-7B-Instruct)"

FULL_FINETUNE: dict[str, Rate] = {
    "dpo": Rate(1e-6, "DPO (Rafailov et al. 2023, arXiv 2305.18290), appendix B; TRL DPOConfig's default"),
    "ipo": Rate(5e-7, "none from the IPO authors; Hugging Face's DPO/IPO/KTO comparison "
                      "(alignment-handbook recipes/pref_align_scan) trains IPO at 5e-7"),
    "simpo": Rate(5e-7, _SIMPO),
    "infonca": Rate(5e-7, _NCA),
    "nca": Rate(5e-7, _NCA),
    "pro": Rate(5e-6, "PRO (Song et al. 2023, arXiv 2306.17492), LLaMA-7B, and its training scripts"),
    "lipo": Rate(1e-6, "none published (no official code); DPO's, the pairwise loss LiPO generalises"),
    "mmpo": Rate(5e-7, "MMPO (Kim et al. 2024, arXiv 2410.03145) official recipes: Gemma-7B and Llama-3-8B"),
    "mrpo": Rate(1e-6, "a tenth of MRPO's official LoRA rate, 1e-5 (Le et al. 2024, arXiv 2405.16388; "
                       "thaihungle/MRPO run_mrpo.py)"),
    "swepo": Rate(1e-6, "none published; DPO's (SWEPO keeps DPO's reference log-ratios and beta)"),
    "refa": Rate(5e-7, "none published; " + _SIMPO + ": REFA is reference-free and length-normalised as SimPO"),
    "ampo": Rate(5e-7, "none published (the AMPO authors released data only); " + _SIMPO
                       + ": AMPO's loss is REFA's"),
    "gpo": Rate(5e-7, "GPO (Zhang et al. 2024, arXiv 2410.02197) official scripts, Llama-3-8B-Instruct and "
                      "Gemma-2-9B-it"),
    "tripo": Rate(5e-7, "TPO (Saeidi et al. 2024, arXiv 2405.16681) official runs on base models; TRL TPOConfig's "
                        "default"),
    "grpo": Rate(1e-6, "DeepSeekMath (Shao et al. 2024, arXiv 2402.03300), section 4.2; TRL GRPOConfig's default"),
}


def _tuned(arm: str, rate: str, metric: str) -> str:
    return (f"the tuned IFEval study's choice for {arm} (issue 27, results/alignment_ifeval_tuned/tuning.md: "
            f"best held-out reward {metric} of 3e-6..3e-4 at {rate}; the initial policy scores 0.363, inside "
            "every choice's interval)")


# The losses the study trained, on the grouping their papers use
_STUDIED: dict[str, Rate] = {
    "dpo": Rate(3e-4, _tuned("dpo best-vs-worst", "3e-4", "0.371 [0.230, 0.512]")),
    "simpo": Rate(3e-4, _tuned("simpo best-vs-worst", "3e-4", "0.376 [0.245, 0.510]")),
    "ampo": Rate(1e-4, _tuned("ampo+optselect", "1e-4", "0.352 [0.207, 0.507]")),
    "swepo": Rate(3e-5, _tuned("swepo all", "3e-5", "0.372 [0.211, 0.530]")),
    "grpo": Rate(3e-4, _tuned("grpo all", "3e-4", "0.350 [0.209, 0.491]")),
}
# The others take the rate of the studied loss nearest in form (PLAN.md): the reference-anchored
# ones dpo's, the reference-free pro and tripo simpo's, refa (AMPO's loss without active selection) ampo's.
NEAREST = {"ipo": "dpo", "infonca": "dpo", "nca": "dpo", "lipo": "dpo", "mmpo": "dpo", "mrpo": "dpo", "gpo": "dpo",
           "pro": "simpo", "tripo": "simpo", "refa": "ampo"}


def _lora(loss: str) -> Rate:
    if loss in _STUDIED:
        return _STUDIED[loss]
    studied = _STUDIED[NEAREST[loss]]
    return Rate(studied.value, f"not trained by the study; the rate of {NEAREST[loss]}, the studied loss nearest "
                               f"in form: {studied.source}")


LORA: dict[str, Rate] = {name: _lora(name) for name in FULL_FINETUNE}


def default_learning_rate(loss: str, lora: bool) -> Rate:
    """The rate a run of `loss` trains at when none is set (KeyError for an unknown loss)."""
    return (LORA if lora else FULL_FINETUNE)[loss]
