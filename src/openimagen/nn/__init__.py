"""Denoising networks: our Imagen Efficient U-Net (and, elsewhere, the DeepFloyd IF U-Net)."""
from .efficient_unet import PRESETS, EfficientUNet, EfficientUNetConfig, UNetConfig

__all__ = ["PRESETS", "EfficientUNet", "EfficientUNetConfig", "UNetConfig"]
