"""Configuration, built once from flags, environment, config file and backend variable,
then passed down as frozen dataclasses."""
