"""LoRA for the student (peft), with the same path filters as selective freezing.

Which linear layers get adapters: those whose module path matches `targets` (default: SpatialVLA's LoRA
recipe, every linear layer of the language model's attention and MLP blocks and of the projector) and
does not match a freeze filter (models/objective.freeze_filters) — so "freeze the first N layers" still
means those layers do not change, with or without LoRA. Every base weight is frozen; the adapters train.

Export: `merged_state_dict` folds the adapters into the base weights (W + s·B·A) layer by layer, giving a
checkpoint in exactly the layout of full fine-tuning; `save_adapter` writes the adapters alone (peft's
adapter_config.json + adapter_model.safetensors), which `load_adapter` puts back on a base model.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_TARGETS = r"^(language_model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj|multi_modal_projector\.\w+)$"


def lora_target_modules(model, targets: str, freeze: list[str]) -> list[str]:
    """Names of the linear modules that get adapters: matching `targets`, in no frozen part."""
    import torch

    rx, frozen = re.compile(targets), [re.compile(f) for f in freeze]
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and rx.search(n) and not any(f.search(n + ".") for f in frozen)]
    if not names:
        raise ValueError(f"no linear layer matches lora_targets={targets!r} outside the frozen parts {freeze}")
    return names


def apply_lora(model, rank: int, alpha: float, dropout: float, targets: str, freeze: list[str]):
    """Wrap `model` with LoRA adapters; returns (peft model, names of the adapted modules)."""
    from peft import LoraConfig, get_peft_model

    modules = lora_target_modules(model, targets, freeze)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, init_lora_weights="gaussian", bias="none")
    peft_model = get_peft_model(model, config)
    return peft_model, modules


def merged_state_dict(peft_model) -> dict:
    """The base model's state dict with every adapter folded in, on CPU; the training model is untouched."""
    import torch
    from peft.tuners.lora import LoraLayer

    base, merged = peft_model.get_base_model(), {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                layer = module.get_base_layer()
                merged[f"{name}.weight"] = (layer.weight + sum(module.get_delta_weight(a) for a in module.active_adapters)).cpu().clone()
                if layer.bias is not None:
                    merged[f"{name}.bias"] = layer.bias.detach().cpu().clone()
        for key, value in base.state_dict().items():
            if "lora_" not in key and ".base_layer." not in key:
                merged.setdefault(key, value.detach().cpu().clone())
    return merged


def save_merged(peft_model, path: str | Path) -> None:
    """A full checkpoint (same files and names as full fine-tuning) with the adapters merged in."""
    base = peft_model.get_base_model()
    base.save_pretrained(path, state_dict=merged_state_dict(peft_model))


def save_adapter(peft_model, path: str | Path) -> None:
    peft_model.save_pretrained(path)


def load_adapter(base_model, path: str | Path, trainable: bool = False):
    """Put saved adapters back on a base model (the base the adapters were trained on)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(path), is_trainable=trainable)
