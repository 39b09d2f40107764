"""Sample apps built on `runtime/`: a CLI (`cli`), an HTTP service (`service`) and a page that
runs a bundle in the browser (`web`). Each has a README with the commands to run it."""
