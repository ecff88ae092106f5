"""One module per pre-training strategy: the graduated reference of what its notebook builds."""
