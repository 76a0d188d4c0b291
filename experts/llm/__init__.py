"""Experts inside the LLM (a model config's `llm_experts:`, onellm/modeling/llm_experts.py):
lora.py (`lora_per_modality`: a peft LoRA adapter per modality and one for text)."""
