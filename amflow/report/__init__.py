"""Tables, plots and the generated report."""
