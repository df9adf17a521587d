"""The console scripts (curriculum-train, -plan, -report, -eval, -export): parse the config, build the
parts, call the room that does the work. May import every other room."""
