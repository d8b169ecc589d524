"""What a migration is asked to do: the plan module's configuration, the table spec, the settings."""
