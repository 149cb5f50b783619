"""A Gaussian-mixture world where the answer is known: exact velocity field, a flow-matching MLP teacher, and SiD
students in both settings, measured against the true data."""
