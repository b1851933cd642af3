"""CommandService and the delivery of commands over the edge streams."""
