"""Training and checkpoint-building tools for ECHO (Stage I AR, Stage II RAD, Stage III DCD)."""
