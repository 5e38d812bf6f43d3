"""Tools around a trained network: the projector (image -> W) and the alpha-beta landscape probe."""
