"""The main job and the paper's comparison: train, correct, score, report."""
