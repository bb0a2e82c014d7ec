"""Each loss's default learning rate, for a full fine-tune and for LoRA, and where it comes from.

`ampo.config.loading` uses it when nothing (recipe, YAML, flag, override) sets
`train.learning_rate`; docs/losses.md prints the same table.

- **Full fine-tune:** the rate the loss's own paper or official code trained with, or, where the
  authors published none, the rate of the published loss it is closest to, named as such. Where
  only a LoRA rate is published, a tenth of it: the LoRA / full fine-tune ratio of about 10 that
  TRL's PEFT guide and Thinking Machines' "LoRA Without Regret" (Schulman et al. 2025) give.
- **LoRA:** ampo's LoRA default of its first versions, 5e-4, for every loss until the tuned IFEval
  study (issue 27, `results/alignment_ifeval_tuned/`) has chosen rates for the losses it measures.
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

_BEFORE_EVIDENCE = Rate(5e-4, "ampo's LoRA default since its first version, not from evidence (the tuned IFEval "
                              "study, issue 27, replaces it for the losses it measures)")
LORA: dict[str, Rate] = {name: _BEFORE_EVIDENCE for name in FULL_FINETUNE}


def default_learning_rate(loss: str, lora: bool) -> Rate:
    """The rate a run of `loss` trains at when none is set (KeyError for an unknown loss)."""
    return (LORA if lora else FULL_FINETUNE)[loss]
