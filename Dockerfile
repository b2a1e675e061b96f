# Minimal image; the Hub/Spaces issue finishes it (CUDA base, non-root user, .dockerignore).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY app.py ./
COPY engine ./engine
COPY ui ./ui
COPY presets ./presets
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
