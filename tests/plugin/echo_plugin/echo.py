"""An echo modality: a 1-D echo trace (sonar), read and rendered the way onellm's IMU is."""

from onellm.modalities.imu import IMUModality
from onellm.registry import MODALITIES


class EchoModality(IMUModality):
    name = "echo"


MODALITIES.register("echo", EchoModality)
