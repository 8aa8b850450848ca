"""Tools that run the product and measure it (`python -m tools.soak`); nothing in the model or the server imports them."""
