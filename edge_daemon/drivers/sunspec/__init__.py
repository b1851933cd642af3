"""SunSpec over Modbus: discovery of the model chain and mapping of the official models onto channels."""
