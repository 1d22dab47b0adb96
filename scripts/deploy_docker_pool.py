"""Deploy the ``score`` flow to a Docker work pool: each flow run gets its own container.

Team mode (docs/team-mode.md). The worker needs ``prefect-docker`` in its image, the Docker
socket (volume ``/var/run/docker.sock:/var/run/docker.sock``) and ``--type docker`` in its
command (docker-compose.yml). The job variables put the run's container on the compose network
with the project mounted. Edit the checkout path and the secret key, then, from the project root:

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python scripts/deploy_docker_pool.py

Nothing happens on import: the deployment is made only when the file is run.
"""

from __future__ import annotations


def main() -> None:
    # Imported here, not at the top: importing this file must not import Prefect or the flows.
    from flows.score import score

    score.deploy(
        name="team",
        work_pool_name="edgeloop-docker",
        image="edgeloop:0.1.0",
        build=False,  # built by `docker compose build`
        push=False,  # a single Docker host; push to a registry for several
        parameters={"config": "/srv/edgeloop/edgeloop.yaml"},
        job_variables={
            "networks": ["edgeloop_default"],
            "volumes": ["/abs/path/to/checkout:/srv/edgeloop"],
            "env": {
                "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                "EDGELOOP_DVC_REMOTE_URL": "s3://edgeloop/dvc",
                "AWS_ENDPOINT_URL": "http://minio:9000",
                "AWS_ACCESS_KEY_ID": "edgeloop",
                "AWS_SECRET_ACCESS_KEY": "...",
            },
            "image_pull_policy": "Never",
        },
    )


if __name__ == "__main__":
    main()
