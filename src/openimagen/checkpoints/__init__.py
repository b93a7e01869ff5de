"""Foreign checkpoints translated into our own pieces (Stage, Cascade, text encoders); reading is in io/."""
