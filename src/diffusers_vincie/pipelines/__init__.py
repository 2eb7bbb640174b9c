from .sampling import official_scheduler, set_trailing_timesteps
