"""A sonar modality: a 1-D echo trace, read and rendered the way onellm's IMU is."""

from onellm.modalities.imu import IMUModality

from onellm.registry import MODALITIES


class SonarModality(IMUModality):
    name = "sonar"


MODALITIES.register("sonar", SonarModality)
