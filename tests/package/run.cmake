# Packaging test: install twin into a scratch prefix, then configure, build and
# run a consumer through find_package(twin) and through add_subdirectory(twin).
# Inputs: TWIN_SOURCE_DIR, WORK_DIR, CMAKE_GENERATOR.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
endfunction()

set(prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${TWIN_SOURCE_DIR} -B ${WORK_DIR}/twin-build -G ${CMAKE_GENERATOR}
    -DTWIN_BUILD_TESTS=OFF -DTWIN_BUILD_EXAMPLES=OFF -DTWIN_BUILD_BENCHMARKS=OFF -DTWIN_INSTALL=ON
    -DCMAKE_INSTALL_PREFIX=${prefix})
run(${CMAKE_COMMAND} --install ${WORK_DIR}/twin-build)
if(NOT EXISTS ${prefix}/include/twin/twin.hpp)
  message(FATAL_ERROR "install tree lacks include/twin/twin.hpp")
endif()

foreach(mode find_package add_subdirectory)
  run(${CMAKE_COMMAND} -S ${TWIN_SOURCE_DIR}/tests/package/consumer -B ${WORK_DIR}/consumer-${mode}
      -G ${CMAKE_GENERATOR} -DTWIN_CONSUMER_MODE=${mode} -DTWIN_SOURCE_DIR=${TWIN_SOURCE_DIR}
      -DCMAKE_PREFIX_PATH=${prefix})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-${mode})
  run(${WORK_DIR}/consumer-${mode}/consumer)
  message(STATUS "consumer via ${mode}: ok")
endforeach()
