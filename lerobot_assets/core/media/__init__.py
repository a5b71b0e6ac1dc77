"""Video decoding, the stored image codec, staging of decoded frames, previews."""
