"""Taking a trained model out: a SavedModel for TF Serving (`saved_model`), a keras-hub preset
(`preset`), a Hugging Face transformers checkpoint (`transformers`) and GLUE leaderboard files
(`submission`)."""
