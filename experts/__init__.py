"""The expert plug-ins, by side: projection/ (how a modality's features become LLM tokens:
the UPM and its routers, the perceiver, the MLP), output/ (output kinds, their heads and
decoders), moai/ (MoAI's auxiliary sources and mixer). Installed as onellm.experts."""
