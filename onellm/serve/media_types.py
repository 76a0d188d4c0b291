"""The file suffix for each media type a data: URL may carry, for the formats onellm's
readers take. Written out rather than asked of `mimetypes`, whose answer comes from the
host's tables (`video/x-matroska` is `.mpv` on Debian, which the video reader refuses)."""

from __future__ import annotations

SUFFIXES = {
    # images (the image reader's formats)
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/bmp": ".bmp",
    "image/x-ms-bmp": ".bmp",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    # video (PyAV's containers the video reader opens)
    "video/mp4": ".mp4",
    "video/x-m4v": ".m4v",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "video/webm": ".webm",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/mpeg": ".mpg",
    "video/ogg": ".ogv",
    # audio (soundfile's formats, and containers with an audio stream)
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/opus": ".opus",
    "audio/webm": ".webm",
}
