"""EMMA cloud services and the platform they share."""
