"""Static file server for the in-browser demo: `python -m sample_apps.web.serve BUNDLE`.

The page itself (index.html, app.js, classifier.js, tokenizer.js) is plain JavaScript over two
npm libraries (onnxruntime-web, tokenizers.js); the Python here only checks the bundle and
serves the page, the libraries and the bundle's files on 127.0.0.1.
"""
