"""Extras of the efficient U-Net: optional modules that read the text and add a spatial map -- one extension point.

`EfficientUNetConfig.extras` is a tuple of kind-tagged configs (JSON `"extras": [{"kind": "layout", ...}]`);
two kinds: nn/layout.py's text layout and nn/spelling.py's letter map. A config `check`s that it fits the
U-Net and `build`s a module, which the U-Net registers under the config's kind (so its weights are
`<kind>.*`) and uses so:

    map = extra(text, mask)        once per forward, from the U-Net's text tokens (B, 1+L, Dc) and mask:
                                   a (B, extra.width, G, G) map. The U-Net adds it to its features after
                                   the input conv and before the middle block, through two zero-initialised
                                   1x1 convs of its own (`<kind>_in`, `<kind>_mid`: `MapInjection`), so a
                                   fresh extra changes nothing the U-Net computes.
                                   An extra whose config says `reads = "letters"` (the spelling) is called
                                   with the letter tokens instead: the first `max_chars` tokens of
                                   text_embeds, which the U-Net splits off before its text path
                                   (`split_letters`), and their mask.
    extra.aux_loss(x0)             an auxiliary training loss from what the last forward saw (the layout:
                                   its image guess against x0), or None for an extra without one.

The U-Net's forward returns its raw output and nothing else, whatever its extras. Training asks the
U-Net (`WithExtras`, below) for the sum of its extras' auxiliary losses, `aux_loss(x0)`, weighted by
`StageTrainConfig.extras_loss`; it may first train the extras alone on those losses for
`StageTrainConfig.extras_warmup` steps, where `forward_extras` runs the text path and the extras without
the U-Net proper (cheap).

A new kind is a config class with `kind`, `check` and `build` whose module follows the contract above,
added to `ExtraConfig` and `EXTRA_CONFIGS` below.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError
from .layers import zero_init
from .layout import TextLayoutConfig
from .spelling import SpellingConfig

ExtraConfig = TextLayoutConfig | SpellingConfig  # the union of the extra kinds
EXTRA_CONFIGS: tuple[type, ...] = (TextLayoutConfig, SpellingConfig)

# The text layout's fields before it became an extra -> what to write instead (EfficientUNetConfig.LEGACY)
LEGACY_KEYS = dict.fromkeys(("layout_grid", "layout_layers"), 'extras=[{"kind": "layout", "grid": G, "layers": N}]')


class MapInjection(nn.Module):
    """Adds an extra's map to features of any resolution: nearest upsample (or area downsample), 1x1 conv.

    Zero-initialised, so a U-Net with a fresh extra computes exactly what it computed without one.
    """

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.proj = zero_init(nn.Conv2d(dim, channels, 1))

    def forward(self, h: Tensor, extra_map: Tensor) -> Tensor:
        size = h.shape[-2:]
        if extra_map.shape[-2:] != size:
            bigger = size[0] >= extra_map.shape[-2]
            extra_map = F.interpolate(extra_map, size=size, mode="nearest" if bigger else "area")
        return h + self.proj(extra_map.to(h.dtype))


def check_extras(extras: tuple, unet) -> None:
    """Raise ValueError unless `extras` are known extra configs of distinct kinds that fit `unet`."""
    kinds = [getattr(e, "kind", None) for e in extras]
    for i, e in enumerate(extras):
        if not isinstance(e, EXTRA_CONFIGS):
            raise ValueError(f"extras[{i}]={e!r} is not an extra config; use one of "
                             f"{[c.__name__ for c in EXTRA_CONFIGS]} (kinds {[c.kind for c in EXTRA_CONFIGS]})")
        if kinds.count(e.kind) > 1:
            raise ValueError(f"extras has {kinds.count(e.kind)} entries of kind {e.kind!r}; give each kind once")
        e.check(unet)


def upgrade_legacy_layout(data: dict) -> dict:
    """An efficient U-Net's JSON with the legacy `layout_grid` (0 = no layout) and `layout_layers` as its
    `extras`: the one reader of that form (EfficientUNetConfig.upgrade_json)."""
    if not any(k in data for k in LEGACY_KEYS):
        return data
    if "extras" in data:
        raise ConfigError(f"give the text layout once, as {LEGACY_KEYS['layout_grid']}: layout_grid / "
                         f"layout_layers are its old spelling")
    data = dict(data)
    grid, layers = data.pop("layout_grid", 0), data.pop("layout_layers", 2)
    data["extras"] = [{"kind": "layout", "grid": grid, "layers": layers}] if grid else []
    return data


class WithExtras:
    """The U-Net's side of the contract (mixed into EfficientUNet, which provides `cfg` and `_text`)."""

    def add_extras(self, cfg, mid_channels: int) -> None:
        """Build and register every extra of `cfg`, each followed by its two injections."""
        for e in cfg.extras:
            extra = e.build(cfg)
            self.add_module(e.kind, extra)
            self.add_module(f"{e.kind}_in", MapInjection(extra.width, cfg.dim))
            self.add_module(f"{e.kind}_mid", MapInjection(extra.width, mid_channels))

    def extra_modules(self) -> list[tuple[nn.Module, MapInjection, MapInjection]]:
        """(extra, its injection after the input conv, its injection before the middle block), in order."""
        return [(getattr(self, e.kind), getattr(self, f"{e.kind}_in"), getattr(self, f"{e.kind}_mid"))
                for e in self.cfg.extras]

    @property
    def letter_slots(self) -> int:
        """How many leading tokens of text_embeds are letters (spelling.SpelledEncoder); 0 without a spelling."""
        return max((e.max_chars for e in self.cfg.extras if getattr(e, "reads", "text") == "letters"), default=0)

    def split_letters(self, text_embeds: Tensor, text_mask: Tensor | None):
        """(letters (B, K, D), their mask, the base encoder's embeds (B, L, D), its mask)."""
        K = self.letter_slots
        if not K:
            return None, None, text_embeds, text_mask
        if text_embeds.shape[1] <= K:
            raise ValueError(f"this U-Net spells (a spelling extra of max_chars={K}), so its text_embeds start with "
                             f"{K} letter tokens; got only {text_embeds.shape[1]} tokens -- encode prompts with "
                             f"SpelledEncoderConfig(max_chars={K}) (spelling.py)")
        letter_mask = None if text_mask is None else text_mask[:, :K]
        return text_embeds[:, :K], letter_mask, text_embeds[:, K:], None if text_mask is None else text_mask[:, K:]

    def extra_maps(self, text: Tensor, mask: Tensor | None, letters: Tensor | None, letter_mask: Tensor | None):
        """[(map (B, D, G, G), injection after the input conv, injection before the middle block)] per extra."""
        out = []
        for e, (extra, into_input, into_middle) in zip(self.cfg.extras, self.extra_modules()):
            reads_letters = getattr(e, "reads", "text") == "letters"
            out.append((extra(letters, letter_mask) if reads_letters else extra(text, mask), into_input, into_middle))
        return out

    def forward_extras(self, text_embeds: Tensor, text_mask: Tensor | None = None) -> None:
        """Only the text path and the extras, for `aux_loss`: a warm-up step skips the U-Net proper."""
        letters, letter_mask, text_embeds, text_mask = self.split_letters(text_embeds, text_mask)
        text, mask = self._text(text_embeds, text_mask)
        self.extra_maps(text, mask, letters, letter_mask)

    def aux_loss(self, x0: Tensor) -> Tensor | None:
        """The sum of the extras' auxiliary losses on what the last forward (or forward_extras) saw, for
        the clean image x0 (B, C, H, W); None when no extra has one."""
        total = None
        for extra, _, _ in self.extra_modules():
            loss = extra.aux_loss(x0)
            if loss is not None:
                total = loss if total is None else total + loss
        return total
