"""What runs leave on disk: workdirs and their lock, model directories (the shipped ones too), the
compilation cache."""
