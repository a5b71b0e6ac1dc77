"""Pure data logic: LeRobot files, media, pinned sources, Deeplake tables. No Dagster, no torch."""
