"""Configuration: the environment, the TOML file and systemd credentials, validated in one place."""
