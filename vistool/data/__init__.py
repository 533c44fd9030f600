"""Image sources and the synthetic datasets the library and the trainers share."""
