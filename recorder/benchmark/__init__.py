"""`recorder benchmark` and `recorder analyze`: inline (sync) versus farm (async) encoding,
measured on real captures and real encodes, with JSON results, reports and charts."""
