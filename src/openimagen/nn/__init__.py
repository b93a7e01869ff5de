"""Denoising networks: our Imagen Efficient U-Net (efficient_unet.py, exported here) and the DeepFloyd IF
U-Net (if_unet.py, import it from there); both return raw outputs and know nothing about noise levels."""
from .efficient_unet import PRESETS, EfficientUNet, EfficientUNetConfig, UNetConfig

__all__ = ["PRESETS", "EfficientUNet", "EfficientUNetConfig", "UNetConfig"]
