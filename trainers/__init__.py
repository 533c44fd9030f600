"""Training the textbook models so vistool can explain them."""
