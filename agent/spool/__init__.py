"""The spool on local disk: the moves of spec files between its folders (one module),
durable writes, locks and the worker registry."""
