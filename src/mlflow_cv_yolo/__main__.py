from mlflow_cv_yolo.cli import main

raise SystemExit(main())
