"""The core path's tools: archive (make archive), server (make serve/stop), predict (make predict),
kserve_bundle (make kserve-bundle)."""

MODEL_NAME = "mnist_gan"  # the archive's name, and so the URL: POST /predictions/mnist_gan
