"""The modalities shipped with onellm; importing this package registers them all."""

from modalities import audio, depth, fmri, image, imu, normal, point, video  # noqa: F401
