"""timm Vision Transformers: every attention head and every MLP hidden unit is a mask group."""

from __future__ import annotations

from torch import nn

from hatzoo.core.groups import GateSite, MaskGroup, UnitSlice
from hatzoo.errors import UnsupportedModelError
from hatzoo.policies.base import Policy, PolicySpec, norm_modules, unit_rows


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _set_heads(attn_name: str):
    def resize(root: nn.Module, kept: int) -> None:
        attn = root.get_submodule(attn_name)
        attn.num_heads = kept
        attn.attn_dim = kept * attn.head_dim

    return resize


def vit_spec(model: nn.Module) -> PolicySpec:
    from timm.layers import Attention, Mlp

    groups = []
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}"
        attn, mlp = block.attn, block.mlp
        if type(attn) is not Attention or getattr(attn, "gate", None) is not None or type(mlp) is not Mlp:
            raise UnsupportedModelError(
                f"{prefix} uses {type(attn).__name__}/{type(mlp).__name__}; the ViT policy supports timm's "
                "plain Attention and Mlp blocks. Write a policy for this variant (see hatzoo.policies)."
            )
        heads, head_dim = attn.num_heads, attn.head_dim
        groups.append(
            MaskGroup(
                name=f"{prefix}.attn.heads",
                size=heads,
                gate=GateSite(f"{prefix}.attn.proj", "input", dim=-1, expand=head_dim),
                producers=unit_rows(model, f"{prefix}.attn.qkv", head_dim, 3),
                consumers=[UnitSlice(f"{prefix}.attn.proj", "weight", 1, head_dim)],
                resize=_set_heads(f"{prefix}.attn"),
                collapse=(f"{prefix}.attn", f"{prefix}.attn.proj.bias"),
            )
        )
        groups.append(
            MaskGroup(
                name=f"{prefix}.mlp.hidden",
                size=mlp.fc1.out_features,
                gate=GateSite(f"{prefix}.mlp.act", "output", dim=-1),
                producers=unit_rows(model, f"{prefix}.mlp.fc1"),
                consumers=[UnitSlice(f"{prefix}.mlp.fc2", "weight", 1)],
                collapse=(f"{prefix}.mlp", f"{prefix}.mlp.fc2.bias"),
            )
        )
    tokens = [
        name for name in ("pos_embed", "cls_token", "reg_token") if getattr(model, name, None) is not None
    ]
    patch = model.patch_embed
    strict = getattr(patch, "strict_img_size", True) and not getattr(model, "dynamic_img_size", False)
    height, width = patch.img_size if strict else (None, None)
    return PolicySpec(
        groups=groups,
        per_task_modules=norm_modules(model),
        per_task_params=[("", name) for name in tokens],
        num_features=model.num_features,
        input_shape=(patch.proj.in_channels, height, width),
    )


VIT = Policy("timm-vit", _is_vit, vit_spec)
