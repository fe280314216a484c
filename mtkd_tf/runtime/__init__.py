"""Infrastructure the method runs on: files written atomically, directory locks, progress and the
run's clock, the environment a result was computed in, verified offline assets, and the oneDNN
decision made before TensorFlow loads. Nothing here knows about MT-DNN or distillation."""
