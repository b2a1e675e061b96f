"""Workers: the long work a job (or the CLI) runs: length-extension training, test-time adaptation, evaluation."""
